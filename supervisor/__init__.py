"""Process management: the daemon (`applianced`) and the admin CLI (`appliancectl`)."""
