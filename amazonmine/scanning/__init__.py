"""What scanning needs beside the model: georeferenced scenes cut into tiles, sites, GIS files, STAC Items, label
polygons, the HTML report page, and chip mosaics with known truth (the demo's and the tests' scenes).
"""
