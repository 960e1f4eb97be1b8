"""A segmentation job: what the user chose, checked; pixels read, blocks sent, GeoTIFFs written."""
