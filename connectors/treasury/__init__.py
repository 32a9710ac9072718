"""The treasury bank: SFTP (paramiko) and the account-journal file formats."""
