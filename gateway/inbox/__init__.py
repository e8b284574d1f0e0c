"""What a studio sees and does with its conversations: the read side (lists, details,
cursors) and the actions that change a conversation's state (status, held mail, downloads)."""
