"""The model under study: spec strings and loading, layers and units, preprocessing, the zoo.

The build stages and the interventions read models only through this package.
"""
