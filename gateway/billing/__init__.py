"""Subscriptions and lockdown payment pauses (Stripe): state, the paid-feature check, operations."""
