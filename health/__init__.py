"""The GWLB health service (Flask under gunicorn) on port 80: reports measured worker liveness."""
