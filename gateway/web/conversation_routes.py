"""Every route of the conversation, its parts, the trash and held mail, for pages.web_routes()."""
from __future__ import annotations

from gateway.web.conversation import CONVERSATION_ROUTES
from gateway.web.conversation_parts import PART_ROUTES
from gateway.web.held import HELD_ROUTES
from gateway.web.message_delete import MESSAGE_DELETE_ROUTES
from gateway.web.trash import TRASH_ROUTES

CONVERSATION_PAGES = [*CONVERSATION_ROUTES, *MESSAGE_DELETE_ROUTES, *PART_ROUTES, *TRASH_ROUTES, *HELD_ROUTES]
