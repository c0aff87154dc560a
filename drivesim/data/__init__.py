"""drivesim.data"""
