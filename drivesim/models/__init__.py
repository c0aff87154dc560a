"""drivesim.models"""
