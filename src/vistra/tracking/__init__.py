"""Multiple-object tracking: MOTChallenge files, frame sources, the online tracker, HOTA / MOTA / IDF1 scores."""
