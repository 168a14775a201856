"""Policy that is neither HTTP nor SQL: what a job may be, who may change what."""
