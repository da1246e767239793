"""What a peer learns with: models as flat parameters, learners, local data, export."""
