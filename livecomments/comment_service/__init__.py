"""The HTTPS API: accounts, posting comments, history, and the stream redirect."""
