"""The CRM layer: records (people, companies, deals), linking mail to them with a stated reason,
the timeline and search, and the one door to protected rows (`crm.access`)."""
