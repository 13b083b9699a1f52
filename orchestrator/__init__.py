"""orchestrator: serves outlet configurations and manages its site's ClickHouse."""
