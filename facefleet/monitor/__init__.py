"""facefleet.monitor"""
