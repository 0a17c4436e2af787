"""The agent's live web page: overview, machine pages with control charts, alarms, sinks (docs/web.md).

Only `edge_agent.web.config` is imported with the config; the server and aiohttp load when the page
is turned on.
"""
