"""facefleet.mesh"""
