"""Inspectors shipped with the appliance, each a worked example of the inspection API
(appliance/inspection.py) that an operator can enable as it is or copy and adapt."""
