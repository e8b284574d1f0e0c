"""The inquiry form each studio shapes itself: its definition and versions, checking a guest's
answers, and turning a submission into the same email-first conversation a mail opens."""
