"""facefleet.models"""
