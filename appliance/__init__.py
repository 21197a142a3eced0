"""The data path of gwlb-appliance: Geneve codec, policy engine, worker loop, batch I/O."""
