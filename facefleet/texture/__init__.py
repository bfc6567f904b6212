"""facefleet.texture"""
