"""facefleet.bench"""
