"""The appliance's process management: the daemon (`applianced`) and the admin CLI (`appliancectl`)."""
