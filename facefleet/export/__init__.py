"""facefleet.export"""
