"""A DynamoDB-compatible endpoint on the store (issue 21, docs/dynamodb.md)."""
