"""mailhost: a POP3 + ESMTP provider where SMTP-Auth and SMTP-after-POP live side by side."""

__version__ = "0.1.0"
