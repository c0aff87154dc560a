"""drivesim.rollout"""
