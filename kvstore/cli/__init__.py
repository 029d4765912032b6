"""kvctl, the admin command line."""
