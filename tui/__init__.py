"""The Textual chat UI (issue 3). It talks to the daemon only through `rlhi_local.client`."""
