"""drivesim.training"""
