"""facefleet.io"""
