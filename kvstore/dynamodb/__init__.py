"""A DynamoDB-compatible endpoint over the store (docs/dynamodb.md)."""
