"""Building a Lens: the pipeline as stages (collect, relevance crops, embed, class relevance), a thin
builder that runs them with resume, and the shards and merge of distributed builds.
"""
