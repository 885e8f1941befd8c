"""The API's routes by domain, each an APIRouter that `create_app` includes: `search` (GET and POST
/search), `documents` (read, add or replace, delete), `info` (/info and the probes /livez, /readyz),
`page` (the search page at / and its static files). Handlers reach the service through the
`ServiceDep` dependency (medsearch.server.service)."""
