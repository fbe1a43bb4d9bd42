"""The explorer's JSON API, one router per page: units, clusters, search, maps, audit, compare, explain, correct,
spaces."""
