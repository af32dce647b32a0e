//! `preln data`: fetch public data sets.

use anyhow::Result;
use preln_data::download::{fetch, Source, MULTI30K_BASE_URL, MULTI30K_FILES};

use crate::cli::{DataCommand, FetchArgs};

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Multi30k(args) => multi30k(args),
    }
}

fn multi30k(args: FetchArgs) -> Result<()> {
    let source = match (&args.from, &args.base_url) {
        (Some(dir), _) => Source::Dir(dir.clone()),
        (None, Some(url)) => Source::Url(url.clone()),
        (None, None) => Source::Url(MULTI30K_BASE_URL.to_string()),
    };
    fetch(&MULTI30K_FILES, &source, &args.out, args.force, |line| eprintln!("{line}"))?;
    eprintln!(
        "next: preln prepare -s de -t en --trainpref {0}/train --validpref {0}/val --testpref {0}/test_2016_flickr --out DATA_DIR",
        args.out.display()
    );
    println!("{}", args.out.display());
    Ok(())
}
