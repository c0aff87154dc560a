"""drivesim.metrics"""
