"""The checkout service (skeleton).

Serves file bytes from checkout buckets through signed URLs and runs bundle checkout jobs. Arrives with issue 5.
"""
