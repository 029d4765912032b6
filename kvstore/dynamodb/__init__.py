"""DynamoDB-compatible endpoint (issue 21): typed items, expressions, operations."""
