"""Who may see and do what: studios and their profiles, API tokens, support access and its
audit log, the soft-delete visibility filters every query uses, and rate limits."""
