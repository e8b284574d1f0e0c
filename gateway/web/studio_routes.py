"""The studio's pages, for gateway/web/pages.py `web_routes()`: settings and people, billing,
support access with the audit log, export and account deletion."""
from __future__ import annotations

from gateway.web.account import ACCOUNT_ROUTES
from gateway.web.billing import BILLING_ROUTES
from gateway.web.studio_pages import STUDIO_ROUTES
from gateway.web.support_access import SUPPORT_ROUTES

STUDIO_PAGES = [*STUDIO_ROUTES, *BILLING_ROUTES, *SUPPORT_ROUTES, *ACCOUNT_ROUTES]
