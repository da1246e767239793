from gossipfl.cli import main

main()
