"""facefleet.geometry"""
