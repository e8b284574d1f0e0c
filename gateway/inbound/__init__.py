"""The path of a guest's mail into a conversation: receive (SMTP edge, or a webhook through
`acceptor`), store raw durably, then answer; later claim, parse (`mime`), thread, persist, and
announce "message threaded" (`events`) to whatever reacts to it."""
