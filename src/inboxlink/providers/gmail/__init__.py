"""Gmail behind the provider seam: `client` talks the Gmail API v1 wire (httpx, batches, quota,
errors), `mapping` turns its resources into domain types, `provider` implements the seam."""
