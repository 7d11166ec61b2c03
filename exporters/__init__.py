"""Export backends for thin networks (installed as ``slimkit.exporters``)."""
