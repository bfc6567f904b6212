"""facefleet.engine"""
