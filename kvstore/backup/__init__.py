"""Consistent online backups (docs/backup.md): the backup file format in :mod:`.file`."""
