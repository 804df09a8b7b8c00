# bash completion for cassini(1), the client of saturnd.
#
# pip installs it as PREFIX/share/bash-completion/completions/cassini.bash. With the
# bash-completion package, a PREFIX of ~/.local or /usr/local is searched, and the file
# is loaded when first needed. Otherwise add to ~/.bashrc:
#   source PREFIX/share/bash-completion/completions/cassini.bash
#
# Completes the options (once an operation such as -l or -r is on the line, only those
# valid with it), the task ids after -r -x -o -e -n in numeric order (asked of the daemon
# with `cassini -l`, through the pipes directory of a -p already on the line, else of
# $SATURND_PIPES_DIR, else the default), day names after -d, month names after --month,
# the @ names after --cron, time zones after --tz, variable names after --env,
# directories after -p, files after --import (then --replace and --check), and after -c
# the command and its arguments.
# Options are read like cassini reads them (POSIX getopt): they end at the first word
# that is not an option, which starts the command of -c.

_cassini_task_ids()
{
    # The ids of `cassini [-p DIR] -l`: its lines start with "ID: ", by increasing id.
    command cassini "$@" -l 2>/dev/null |
        command sed -n 's/^\([0-9][0-9]*\): .*/\1/p'
}

# The options that may follow each operation (cassini/cli.py's _MODIFIERS): the others
# are refused there. No operation yet: any option.
declare -gA _cassini_options_after=(
    [l]='-h --help -p -l -v --json'
    [c]='-h --help -p -c -m -H -d --dom --month --cron --tz --env'
    [x]='-h --help -p --json'
    [n]='-h --help -p -N --json'
    [r]='-h --help -p'
    [o]='-h --help -p'
    [e]='-h --help -p'
    [q]='-h --help -p'
    [export]='-h --help -p'
    [import]='-h --help -p --replace --check'
    [edit]='-h --help -p'
    [version]='-h --help -p'
)

_cassini()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    local word pending='' create='' operation='' given=' ' letter i=1 j
    local -a pipes=()

    # Walk the words before the cursor as getopt would.
    while ((i < COMP_CWORD)); do
        word=${COMP_WORDS[i]}
        if [[ -n $pending ]]; then
            # The argument of the previous option. `--import=FILE` reaches us as
            # three words: --import, =, FILE.
            if [[ $pending == @(import|dom|month|cron|tz|env) && $word == = ]]; then
                ((i++))
                continue
            fi
            [[ $pending == p ]] && pipes=(-p "$word")
            pending=''
        elif [[ $word == -- ]]; then
            ((i++))
            break
        elif [[ ${#word} -gt 2 && --import == "$word"* ]]; then
            pending=import # --import or a prefix of it, as getopt takes it
            operation=import
        elif [[ ${word%%=*} == --@(d|do|dom|m|mo|mon|mont|month|cr|cro|cron|t|tz|en|env) ]]; then
            # The options of -c that take a value (getopt takes any unique prefix: --c
            # is --check or --cron, --e --edit, --env or --export); with
            # `=VALUE` in the same word, nothing is pending.
            local long
            case ${word:2:1} in
                d) long=dom ;; m) long=month ;; c) long=cron ;; t) long=tz ;; e) long=env ;;
            esac
            given+="--$long "
            [[ $word == *=* ]] || pending=$long
        elif [[ ${#word} -gt 3 && --export == "$word"* ]]; then
            operation=export
        elif [[ ${#word} -gt 3 && --edit == "$word"* ]]; then
            operation=edit
        elif [[ ${#word} -gt 2 && --version == "$word"* ]]; then
            operation=version
        elif [[ $word == --* ]]; then
            :
        elif [[ $word == -?* ]]; then
            # A cluster of letters such as -lv, or an option with its argument: -p/dir.
            for ((j = 1; j < ${#word}; j++)); do
                letter=${word:j:1}
                case $letter in
                    [lcqrxoen]) operation=$letter ;;&
                    c) create=1 ;;
                    [mHdprxoenN])
                        given+="-$letter "
                        if ((j + 1 < ${#word})); then
                            [[ $letter == p ]] && pipes=(-p "${word:j+1}")
                        else
                            pending=$letter
                        fi
                        break
                        ;;
                esac
            done
        else
            break # the first operand: the command of -c
        fi
        ((i++))
    done
    # A leading ~ of -p's directory, as the shell would have expanded it.
    if ((${#pipes[@]})) && [[ ${pipes[1]} == '~' || ${pipes[1]} == '~/'* ]]; then
        pipes[1]=$HOME${pipes[1]#'~'}
    fi
    # Without -p, cassini reads SATURND_PIPES_DIR; pass it on even if not exported.
    if ((${#pipes[@]} == 0)) && [[ -n ${SATURND_PIPES_DIR-} ]]; then
        pipes=(-p "$SATURND_PIPES_DIR")
    fi

    COMPREPLY=()
    if ((i < COMP_CWORD)); then
        # Inside the command of -c: complete it as a command line of its own.
        if declare -F _command_offset >/dev/null; then
            _command_offset "$i"
        else
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return
    fi
    case $pending in
        p)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur")
            return
            ;;
        import)
            [[ $cur == = ]] && cur=''
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return
            ;;
        [rxoen])
            mapfile -t COMPREPLY < <(compgen -W "$(_cassini_task_ids "${pipes[@]}")" -- "$cur")
            # Keep cassini's order, by increasing id: bash would sort 10 before 2.
            compopt -o nosort 2>/dev/null
            return
            ;;
        month)
            local done_part=${cur%"${cur##*[,-]}"}
            mapfile -t COMPREPLY < <(compgen -P "$done_part" -W 'jan feb mar apr may jun jul
                aug sep oct nov dec january february march april june july august
                september october november december' -- "${cur##*[,-]}")
            return
            ;;
        cron)
            [[ $cur == = ]] && cur=''
            mapfile -t COMPREPLY < <(compgen -W '@reboot @hourly @daily @midnight @weekly
                @monthly @yearly @annually' -- "$cur")
            return
            ;;
        tz)
            # The zones of the system's database: its files whose names start with a
            # capital (posix/ and right/ are copies, the lower-case files are not zones).
            [[ $cur == = ]] && cur=''
            local zones=${TZDIR:-/usr/share/zoneinfo}
            mapfile -t COMPREPLY < <(cd "$zones" 2>/dev/null &&
                compgen -W "$(command find [A-Z]* \( -type f -o -type l \) 2>/dev/null)" -- "$cur")
            return
            ;;
        env)
            [[ $cur == = ]] && cur=''
            [[ $cur == *=* ]] && return # the value: anything
            compopt -o nospace 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -e -S = -- "$cur")
            return
            ;;
        d)
            # Day names, short and full, after the last , or - of a list or range.
            local done_part=${cur%"${cur##*[,-]}"}
            mapfile -t COMPREPLY < <(compgen -P "$done_part" -W 'sun mon tue wed thu fri sat
                sunday monday tuesday wednesday thursday friday saturday' -- "${cur##*[,-]}")
            return
            ;;
        ?*)
            return # a timing field or a count: nothing to offer
            ;;
    esac
    if [[ -n $create && $cur != -* ]]; then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        return
    fi
    local offered='-h -l -v -c -m -H -d -r -x -o -e -n -N -q -p --export --import --json
        --help --version --dom --month --cron --tz --env --replace --check --edit'
    [[ -n $operation ]] && offered=${_cassini_options_after[$operation]}
    # --cron says all five fields: none of theirs with it.
    if [[ $given == *" --cron "* ]]; then
        given+='-m -H -d --dom --month '
    elif [[ $given == *" -"[mHd]" "* || $given == *" --"@(dom|month)" "* ]]; then
        given+='--cron '
    fi
    # cassini refuses a second -m -H -d -N -p --dom --month --cron --tz, even with the same
    # value (--env may be repeated).
    offered=" ${offered//$'\n'/ } "
    for word in -m -H -d -N -p --dom --month --cron --tz; do
        [[ $given == *" $word "* ]] && offered=${offered/ $word / }
    done
    mapfile -t COMPREPLY < <(compgen -W "$offered" -- "$cur")
}

complete -F _cassini cassini
