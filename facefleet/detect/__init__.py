"""facefleet.detect"""
