"""The explorer's JSON API, one router per page: units, search, maps, audit, compare, spaces."""
